"""`workbench models import`: a model already on disk becomes an artifact in the workspace."""
