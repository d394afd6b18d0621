# imds-probe: the conformance probe that runs inside kind test pods, as a FROM scratch image.
# Built by ci/build-images.sh from the statically linked `imds-probe` binary (crate probe/, std only). The
# harness's kind backend runs it as each test pod's main process (`/imds-probe sleep`) and opens connections
# from inside the pod with `kubectl exec -i <pod> -- /imds-probe relay --connect IP:PORT`.
FROM scratch
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/imds-conformance/imds-conformance
LABEL org.opencontainers.image.title="imds-probe" \
      org.opencontainers.image.description="Conformance probe for imds-conformance's kind backend: relays one TCP connection from inside a pod" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT OR Apache-2.0"
COPY rootfs/ /
COPY imds-probe /imds-probe
USER 65534:65534
ENTRYPOINT ["/imds-probe"]
CMD ["sleep"]
