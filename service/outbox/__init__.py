"""The outbox: events written with the change (``events``), hospitals' webhook endpoints and
dead letters (``endpoints``, ``router``), and their delivery, signed and in order
(``dispatcher``, over a connection kept per endpoint: ``connections``)."""
