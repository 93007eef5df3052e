"""Keypoint evaluation: COCO OKS AP/AR per category and calibration of the predicted Gaussians."""
