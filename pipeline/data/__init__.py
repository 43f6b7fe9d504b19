"""The data the stages start from: the embedded default (emoji, clip art and Tux Paint from packages,
split into corpus and benchmark) and local datasets in their published layouts (`layouts`, `local`)."""
