# Stand-in for the CUDA base image, used ONLY by `make docker-test` on machines that have no GPU and
# cannot pull images (see docker/standin-base.sh). It mimics what the Dockerfile relies on in
# pytorch/pytorch: `python` and `pip` on PATH, root, torch already installed (here a CPU build).
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
COPY wheels/ /tmp/wheels/
ARG TORCH_VERSION=2.13.0
RUN python3 -m venv /opt/venv \
    && pip install --find-links /tmp/wheels "torch==${TORCH_VERSION}" \
    && rm -rf /tmp/wheels \
    && python -c "import torch; print('stand-in base: torch', torch.__version__)"
CMD ["bash"]
