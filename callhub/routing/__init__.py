"""Routing by rota: agents, shifts, the next-agent choice and the FastAGI server."""
