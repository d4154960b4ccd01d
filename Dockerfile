# One image for every role: `agentfence controller` (the controller: reconciler, webhook, identity, distribution) and
# `agentfence sidecar` (the injected egress fence). Multi-stage: build with dev dependencies, ship without them.
# syntax=docker/dockerfile:1

FROM node:24-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY lib lib
COPY cli cli
COPY operator operator
COPY webhook webhook
COPY sidecar sidecar
COPY localcluster localcluster
RUN npm run build && npm prune --omit=dev

FROM node:24-bookworm-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
COPY bin bin
COPY crds crds
# A fixed non-root UID, distinct from any agent's; the webhook refuses app containers that use it.
USER 15001:15001
ENTRYPOINT ["node", "/app/bin/agentfence.mjs"]
CMD ["--help"]
