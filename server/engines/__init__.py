"""Engines that turn prompt embeddings into text, behind one interface (``engines.base.Engine``)."""
