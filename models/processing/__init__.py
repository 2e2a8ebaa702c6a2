"""Image processors (slow, fast, feature extractor): sizes, annotations, batching, post-processing."""
