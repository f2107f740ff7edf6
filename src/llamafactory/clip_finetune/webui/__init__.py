"""The CLIP tab of LLaMA Board (``llamafactory-cli webui``), added through the same import hook as the stage."""
