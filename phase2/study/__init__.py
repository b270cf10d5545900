"""The recipe study: K recipes x S seeds fine-tuned from the same start weights on the same
dataset version, every result evaluated on the same split, summarized per recipe with the
spread across seeds and paired bootstrap comparisons (flow ``phase2-study``, ``phase2 study``)."""
