/**
 * The one core/v1 Pod type: the fields agentfence reads or writes, with every other field passed through. It is
 * what the API server sends to the webhook (the spec is always there); consumers that read less take a narrow
 * view of it with Pick (the compiler's PodInput, the identity exchange's PodIdentity) under their own name.
 */
import type { ObjectMeta } from '../api/meta.ts';

export interface EnvVar {
  name: string;
  value?: string;
  valueFrom?: unknown;
}

/** Optional fields stay optional: the webhook sees the pod before the API server validates it. */
export interface ContainerPort {
  name?: string;
  containerPort?: number;
  protocol?: 'TCP' | 'UDP' | 'SCTP';
  [field: string]: unknown;
}

export interface Container {
  name: string;
  image?: string;
  env?: EnvVar[];
  envFrom?: unknown[];
  ports?: ContainerPort[];
  volumeMounts?: { name: string; [field: string]: unknown }[];
  securityContext?: {
    runAsUser?: number;
    capabilities?: { add?: string[]; drop?: string[] };
    privileged?: boolean;
    [field: string]: unknown;
  };
  restartPolicy?: string;
  [field: string]: unknown;
}

export interface PodSpec {
  containers: Container[];
  initContainers?: Container[];
  ephemeralContainers?: Container[];
  volumes?: { name: string; hostPath?: unknown; [field: string]: unknown }[];
  hostNetwork?: boolean;
  hostPID?: boolean;
  hostIPC?: boolean;
  shareProcessNamespace?: boolean;
  serviceAccountName?: string;
  nodeName?: string;
  securityContext?: { runAsUser?: number };
  [field: string]: unknown;
}

export interface PodStatus {
  podIP?: string;
  podIPs?: { ip: string }[];
  [field: string]: unknown;
}

export interface Pod {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  spec: PodSpec;
  status?: PodStatus;
  [field: string]: unknown;
}
