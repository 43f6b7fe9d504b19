"""What the stages compute with: models, losses, methods, encoding and scoring, WiSE-FT, distributed
runs, captioners. Imports no stage."""
