# mock-arm: Azure Resource Manager's VM/VMSS identity surface as a FROM scratch image.
# Built by ci/build-images.sh from a statically linked binary compiled on the host (no base image is pulled).
# Build context: a staging directory holding `mock-arm` and `rootfs/` (a world-writable /tmp only).
FROM scratch
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/imds-conformance/imds-conformance
LABEL org.opencontainers.image.title="mock-arm" \
      org.opencontainers.image.description="Azure Resource Manager's identity surface for VMs and scale sets, wired to mock-imds" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY rootfs/ /
COPY mock-arm /mock-arm
USER 65534:65534
EXPOSE 8090
# 0.0.0.0 is right inside a container (its own network namespace); the CLI default is 127.0.0.1:8090.
ENTRYPOINT ["/mock-arm"]
CMD ["--listen", "0.0.0.0:8090"]
