"""The operator console at ``/console``: server-rendered pages over :mod:`radloop.services` for
people who run radloop (overview, studies, jobs, deliveries, pull sources, pipelines, models),
live by polling with ETags. ``radloop.api.create_app`` mounts :data:`routes.router`."""
