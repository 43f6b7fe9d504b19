"""What the stages read and write: atomic outputs, WebDataset shards, embeddings, JSON-lines records,
eval sets, the glue to clip-retrieval, and the export of a model to a plain open_clip folder. Imports no
stage."""
