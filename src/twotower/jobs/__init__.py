"""Offline jobs over a trained model: the layer between training and serving.

* :mod:`.export` — the candidate tower over the whole corpus -> an embeddings export (``twotower export``);
* :mod:`.refresh` — the offline user encoder -> states in the feature store (``twotower refresh-states``);
* :mod:`.serving` — an artifact root the service serves from: model copy, export, states, published index
  (``twotower serve-prepare``).

Jobs may import training, evaluation, the model, data, index and store; the service never imports a job.
Nothing is imported here, so that ``import twotower.jobs.refresh`` does not pull in the others.
"""
