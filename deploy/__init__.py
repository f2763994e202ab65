"""Deployment artefacts: KEDA manifests (``deploy.keda``), the compose stack's files, the fleet simulator."""
