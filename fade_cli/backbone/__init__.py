"""The CLIP backbone: open_clip imported lean, model files checked, weights fetched into the cache and hashed,
the model built and loaded (``model.load_model``)."""
