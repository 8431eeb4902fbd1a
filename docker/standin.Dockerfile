# Stand-in for the image's base (python:3.11-slim-bookworm), used ONLY by `make docker-test` on machines that
# cannot pull images (see docker/standin-base.sh): Debian bookworm with `python` and `pip` on PATH, as root.
# It also keeps a CPU wheel of the pinned torch in /opt/torch-wheels (when the host has one), which
# docker-test's build of docker/Dockerfile installs with --build-arg TORCH_PIP_ARGS=--find-links=/opt/torch-wheels.
ARG ROOTFS=ptuning-standin-rootfs
FROM ${ROOTFS}
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The host's CA bundle, so that pip in the image trusts what the host trusts (a TLS-inspecting proxy in front
# of the package index, for instance).
COPY host-ca-bundle.crt /usr/local/share/host-ca-bundle.crt
ENV PIP_CERT=/usr/local/share/host-ca-bundle.crt \
    SSL_CERT_FILE=/usr/local/share/host-ca-bundle.crt \
    REQUESTS_CA_BUNDLE=/usr/local/share/host-ca-bundle.crt
COPY wheels/ /opt/torch-wheels/
RUN python3 -m venv /opt/venv \
    && mkdir -p /opt/torch-wheels \
    && echo "stand-in base: $(python --version), torch wheels: $(ls /opt/torch-wheels)"
CMD ["bash"]
