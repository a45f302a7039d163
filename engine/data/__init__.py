"""Training data: procedural landscapes (`engine.data.landscapes`) and readers for users' own images
(`engine.data.datasets`)."""
