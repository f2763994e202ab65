"""Per-class consumer Deployments and KEDA ScaledObjects, built with the kubernetes client's models.

Entry points: ``render.render_all`` / ``render.render_documents`` / ``render.drift`` and ``apply.apply``.
The arithmetic behind every number lives in ``params``.
"""
