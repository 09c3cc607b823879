"""Data sources, conversion to ArrayRecord and Grain pipelines."""
