"""What the stages read and write: atomic outputs, WebDataset shards, embeddings, JSON-lines records,
eval sets, and the glue to clip-retrieval. Imports no stage."""
