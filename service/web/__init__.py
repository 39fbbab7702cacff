"""The HTTP edge: the app's shared state and the unit of work every endpoint runs in."""
