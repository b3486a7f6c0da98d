"""Build TorchServe model archives (.mar) from declared specs into ``model_store/``."""
