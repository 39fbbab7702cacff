from service.outbox.events import emit as emit  # temporary: removed once every caller imports the outbox
