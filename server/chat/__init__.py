"""OpenAI-compatible chat completions and model listing over the generation path of ``/generate``."""
