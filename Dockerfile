# A small static image running as non-root:
#   docker build -t portcullis .
# Build stage: a fully static binary (musl; ring builds with musl-gcc).
FROM rust:1-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The dist profile: release with fat LTO (see Cargo.toml).
RUN cargo build --profile dist --locked --bin portcullis --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/dist/portcullis /portcullis

# Runtime stage: no shell, no package manager, nothing but the binary and CA roots.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /portcullis /portcullis
USER 65532:65532
EXPOSE 8080 8443 9180
ENTRYPOINT ["/portcullis"]
CMD ["controller"]
