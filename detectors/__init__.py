"""Detector adapters: each module wraps one family of detectors as an ensemble member (see fusion.detector)."""
