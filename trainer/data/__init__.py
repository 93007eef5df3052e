"""COCO keypoint data for training and evaluation: schema, validation, dataset, augmentation, batching."""
