"""An example of user code packaged into a worker image (see the Dockerfile beside this folder)."""
