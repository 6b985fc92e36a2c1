# syntax=docker/dockerfile:1
#
# Outpost image: one image for every role. The command picks it:
#   docker run outpost edge   --listen 0.0.0.0:8080 --upstream http://shield:9000 --data-dir /data
#   docker run outpost shield --listen 0.0.0.0:9000 --origin http://origin:7001 --data-dir /data
#   docker run outpost origin --listen 0.0.0.0:7001
# See docker-compose.yml for a two-PoP deployment.
#
# Node 22 (LTS) is used in both stages: Node 20 reached end of life in April 2026. The package
# needs >=20.19 (engines); override with --build-arg NODE_IMAGE=node:20-bookworm-slim if you must.
ARG NODE_IMAGE=node:22-bookworm-slim

# ---- build: install everything, compile TypeScript, then drop dev dependencies ---------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
ENV NODE_ENV=development \
    npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false

# Dependencies first so the layer is reused when only sources change. --ignore-scripts: the
# package's own `prepare` (tsc) cannot run before the sources are copied; `npm rebuild` below
# runs the dependencies' install scripts (classic-level picks its prebuilt LevelDB binding).
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts

# Everything tsconfig.json includes (the tests compile too; they are dropped from dist below).
COPY tsconfig.json ./
COPY bin ./bin
COPY cli ./cli
COPY config ./config
COPY edge ./edge
COPY origin-shield ./origin-shield
COPY storage ./storage
COPY pipeline ./pipeline
COPY demo-origin ./demo-origin
COPY test ./test
COPY bench ./bench

RUN npm rebuild \
 && npm run build \
 && rm -rf dist/test dist/bench \
 && find dist -name '*.map' -delete \
 && npm prune --omit=dev

# ---- runtime: production dependencies, compiled JavaScript, the launcher -----------------------
FROM ${NODE_IMAGE} AS runtime
WORKDIR /app
ENV NODE_ENV=production

# Application files stay root-owned (read-only to the process); only /data is the node user's.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin

# The disk cache (LevelDB). Created owned by `node` so a fresh named volume inherits the owner.
RUN mkdir -p /data && chown node:node /data
VOLUME ["/data"]
ENV OUTPOST_DATA_DIR=/data

# edge, shield, demo origin (defaults used by docker-compose.yml)
EXPOSE 8080 9000 7001

USER node
# Node is PID 1 unless the container runs with an init (compose: `init: true`); outpost handles
# SIGTERM itself (finishes requests in flight, up to --shutdown-timeout-ms).
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "bin/outpost"]
CMD ["--help"]
