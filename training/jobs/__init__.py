"""The jobs: ingest -> refine -> train -> forecast -> aggregate, and nightly around them."""
