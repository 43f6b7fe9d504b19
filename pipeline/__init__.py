"""ARF: anchor-based robust finetuning of CLIP-style models, as a staged offline pipeline. See README.md."""
