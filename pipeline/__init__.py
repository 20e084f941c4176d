"""Pure pipeline stages, no Ray: input decoding and frame selection, matting and framing, fusion, export.

The same functions serve the HTTP path (through `deployments/`) and batch runs (`serve_app.batch`).
"""
