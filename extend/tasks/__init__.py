"""Synthetic retrieval tasks shared by data preparation and evaluation."""
