# kernelserver in a conda (micromamba) environment, run as a non-root user.
#   docker build -t kernelserver .
#   docker run -p 127.0.0.1:5000:5000 -e KERNELSERVER_TOKEN=... kernelserver
# GPU: add --gpus all (NVIDIA Container Toolkit) and install your CUDA stack (e.g. pytorch) into
# the environment; see docs/deployment.md.
FROM mambaorg/micromamba:1.5-bookworm-slim

COPY --chown=$MAMBA_USER:$MAMBA_USER . /opt/kernelserver
WORKDIR /opt/kernelserver
RUN micromamba install -y -n base -f environment.yml && micromamba clean --all --yes

# The image's user is already non-root ($MAMBA_USER); namespaces run as this user.
USER $MAMBA_USER
ENV KERNELSERVER_DATA_DIR=/home/$MAMBA_USER/data \
    PYTHONUNBUFFERED=1
EXPOSE 5000

# Binding 0.0.0.0 inside the container is needed for -p to work; the token must come from the
# environment (KERNELSERVER_TOKEN), or one is generated and printed to the log.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["micromamba", "run", "-n", "base", "python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["/usr/local/bin/_entrypoint.sh"]
CMD ["kernelserver", "serve", "--host", "0.0.0.0", "--port", "5000"]
