"""HTTP layer and engines of aim-serve. Build an app with ``server.app.create_app(settings)``."""
