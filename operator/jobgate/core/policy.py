"""The ConcurrencyPolicy and ClusterConcurrencyPolicy resources: pydantic models, the single source of their CRDs.

The descriptions here are what `kubectl explain conpol.spec` prints; the
``x-kubernetes-validations`` (CEL) and patterns are what make the API server
refuse a bad policy at `kubectl apply`, with the field named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from jobgate.core.timestamps import parse_timestamp

GROUP = "jobgate.dev"
VERSION = "v1alpha1"
KIND = "ConcurrencyPolicy"
PLURAL = "concurrencypolicies"
SINGULAR = "concurrencypolicy"
# Not "cpol": Kyverno's ClusterPolicy has it, and two CRDs with one short name make `kubectl get` ambiguous.
SHORT_NAMES = ("conpol",)
CLUSTER_KIND = "ClusterConcurrencyPolicy"
CLUSTER_PLURAL = "clusterconcurrencypolicies"
CLUSTER_SINGULAR = "clusterconcurrencypolicy"
CLUSTER_SHORT_NAMES = ("cconpol",)
# In keyLabels, the Job's namespace rather than a label: "one per team in each namespace", or, in a
# ClusterConcurrencyPolicy, a per-namespace key next to cross-namespace ones. jobgate.dev is ours: no Job
# label of that name is read.
NAMESPACE_KEY = "jobgate.dev/namespace"

# A label key: an optional DNS-subdomain prefix and "/", then a name of at most 63 characters.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
# "[.]", not an escaped dot: CEL string literals would need the backslash doubled.
LABEL_PREFIX = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
LABEL_KEY_PATTERN = rf"^({LABEL_PREFIX}/)?{LABEL_NAME}$"
LABEL_VALUE_PATTERN = rf"^({LABEL_NAME})?$"
LABEL_KEY_MAX = 253 + 1 + 63
LABEL_KEY_RULE = {
    "rule": f"self.matches('{LABEL_KEY_PATTERN}') && (!self.contains('/') || self.indexOf('/') <= 253)",
    "message": "must be a valid label key: an optional DNS subdomain prefix and '/', "
    "then 1-63 characters [A-Za-z0-9-_.] starting and ending alphanumeric",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _cel(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class LabelSelectorRequirement(_Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                "rule": "self.operator in ['Exists', 'DoesNotExist'] "
                "? (!has(self.values) || size(self.values) == 0) : (has(self.values) && size(self.values) > 0)",
                "message": "values must be empty for Exists and DoesNotExist and non-empty for In and NotIn",
            }
        )
    )

    key: str = Field(
        description="The label key that the selector applies to.",
        max_length=LABEL_KEY_MAX,
        json_schema_extra=_cel(LABEL_KEY_RULE),
    )
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[str] | None = Field(
        default=None,
        description="Label values. Non-empty for In and NotIn; must be empty for Exists and DoesNotExist.",
        max_length=256,
        json_schema_extra={"items": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}},
    )


class LabelSelector(_Model):
    """A standard Kubernetes label selector (metav1.LabelSelector)."""

    matchLabels: dict[str, str] | None = Field(
        default=None,
        description="Labels that must be present with exactly these values.",
        max_length=64,
        json_schema_extra={
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN},
            **_cel(
                {
                    "rule": f"self.all(k, k.size() <= {LABEL_KEY_MAX} && k.matches('{LABEL_KEY_PATTERN}'))",
                    "message": "every key must be a valid label key",
                }
            ),
        },
    )
    matchExpressions: list[LabelSelectorRequirement] | None = Field(
        default=None,
        description="Requirements on labels, all of which must hold (ANDed with matchLabels).",
        max_length=64,
    )


MAX_KEY_LIMITS = 200
LABEL_VALUE_SCHEMA: dict[str, Any] = {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN}

Overflow = Literal["Reject", "ReplaceOldest"]


class KeyLimit(_Model):
    """A named key's own limit: it replaces spec.maxConcurrent for that key only."""

    key: dict[str, str] = Field(
        description="The key, as in status.busiestKeys: a value for each label of keyLabels, and no other label.",
        max_length=16,
        json_schema_extra={"additionalProperties": LABEL_VALUE_SCHEMA},
    )
    maxConcurrent: int = Field(
        description="How many Jobs of this key may run at once, instead of spec.maxConcurrent. "
        "0 pauses this key alone.",
        ge=0,
        le=1_000_000,
    )


class PolicySpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            {
                # An entry keyed on other labels than keyLabels could never match a Job: refuse it.
                "rule": "!has(self.limits) || self.limits.all(l, "
                "l.key.size() == (has(self.keyLabels) ? size(self.keyLabels) : 0) "
                "&& l.key.all(label, has(self.keyLabels) && label in self.keyLabels))",
                "message": "every key in limits must name exactly the labels of keyLabels, each with a value",
                "fieldPath": ".limits",
                "reason": "FieldValueInvalid",
            },
            {
                "rule": "!has(self.overflow) || has(self.maxQueued)",
                "message": "overflow applies to a bounded queue: set maxQueued too",
                "fieldPath": ".overflow",
                "reason": "FieldValueRequired",
            },
        )
    )

    selector: LabelSelector = Field(
        description="Which Jobs of this namespace the policy governs, by their labels. "
        "An empty selector ({}) governs every Job of the namespace."
    )
    keyLabels: list[str] = Field(
        default_factory=list,
        description="Labels whose values form a Job's key; each key value gets its own maxConcurrent slots. "
        "A Job that lacks one of these labels counts under the empty value. "
        f"{NAMESPACE_KEY} stands for the Job's namespace. "
        "An empty list puts every selected Job under one key.",
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "items": {"type": "string", "maxLength": LABEL_KEY_MAX, **_cel(LABEL_KEY_RULE)},
        },
    )
    maxConcurrent: int = Field(
        description="How many Jobs may run at once per key value. 0 pauses the policy: "
        "no new admissions, running Jobs are left alone.",
        ge=0,
        le=1_000_000,
    )
    limits: list[KeyLimit] = Field(
        default_factory=list,
        description="Named keys with their own maxConcurrent (e.g. a bigger customer); "
        "every other key keeps spec.maxConcurrent. Each key appears at most once.",
        max_length=MAX_KEY_LIMITS,
        json_schema_extra=_cel(
            {
                "rule": "self.all(a, self.exists_one(b, b.key == a.key))",
                "message": "each key may appear only once in limits",
                # Not FieldValueDuplicate: its errors print the value only, never this message.
                "reason": "FieldValueInvalid",
            }
        ),
    )
    maxQueued: int | None = Field(
        default=None,
        description="How many Jobs of each key may wait in the queue (held Jobs not counted); "
        "unset: no bound. What happens to one more is spec.overflow's choice. Running Jobs are never touched.",
        ge=0,
        le=1_000_000,
    )
    overflow: Overflow | None = Field(
        default=None,
        description="When a key's queue is full (maxQueued): Reject (the default) refuses the new Job at creation, "
        "which needs jobgate's webhook; ReplaceOldest queues it and deletes the key's oldest queued Job, "
        "with an Event (newer runs replace older waiting ones).",
    )

    @property
    def queue_overflow(self) -> Overflow:
        return self.overflow or "Reject"

    @property
    def replaces_oldest(self) -> bool:
        """Whether jobgate itself bounds the queues, by deleting their oldest queued Jobs."""
        return self.maxQueued is not None and self.overflow == "ReplaceOldest"


class ClusterPolicySpec(PolicySpec):
    """A ClusterConcurrencyPolicy's spec: a ConcurrencyPolicy's, over the Jobs of the namespaces selected."""

    selector: LabelSelector = Field(
        description="Which Jobs of the namespaces that namespaceSelector selects the policy governs, by their labels. "
        "An empty selector ({}) governs every Job of those namespaces."
    )
    namespaceSelector: LabelSelector = Field(
        description="Which namespaces' Jobs the policy governs, by the namespaces' labels ({}: every namespace; "
        "kubernetes.io/metadata.name selects by name). A key spans these namespaces: Jobs with the same "
        f"keyLabels values share its slots wherever they run, unless keyLabels names {NAMESPACE_KEY}."
    )


class KeyCount(_Model):
    key: dict[str, str] = Field(description="The key: a value for each of keyLabels.")
    running: int = Field(description="Jobs of this key that hold a slot.")
    queued: int = Field(description="Jobs of this key waiting for a slot.")
    maxConcurrent: int | None = Field(
        default=None, description="The key's own limit, when spec.limits names it; else spec.maxConcurrent applies."
    )


class Condition(_Model):
    type: str = Field(description="Condition type, e.g. Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="One CamelCase word saying why.")
    message: str = Field(default="", description="A sentence for humans.")
    lastTransitionTime: str | None = Field(default=None, description="When status last changed (RFC 3339).")


MAX_BUSIEST_KEYS = 10


class PolicyStatus(_Model):
    observedGeneration: int | None = Field(
        default=None, description="The metadata.generation that this status reflects."
    )
    running: int = Field(default=0, description="Running Jobs over all keys.")
    queued: int = Field(default=0, description="Queued Jobs over all keys.")
    keys: int = Field(default=0, description="Key values that have running or queued Jobs.")
    busiestKeys: list[KeyCount] = Field(
        default_factory=list,
        description=f"At most {MAX_BUSIEST_KEYS} keys, most queued first.",
        max_length=MAX_BUSIEST_KEYS,
    )
    conditions: list[Condition] = Field(default_factory=list, description="Ready says whether jobgate acts.")


class ConcurrencyPolicy(_Model):
    """A ConcurrencyPolicy as jobgate reads it: identity, spec, and when it began to govern.

    A ClusterConcurrencyPolicy too: its namespace is "" (no namespaced policy has that
    one, so the two kinds' (namespace, name) never clash) and its spec a ClusterPolicySpec.
    """

    namespace: str  # "" for a ClusterConcurrencyPolicy
    name: str
    uid: str
    generation: int
    created: float  # creationTimestamp, seconds since the epoch
    spec: PolicySpec
    # spec.limits by key tuple (values in keyLabels order), made once: limit_for runs for every Job of every pass.
    _own_limits: dict[tuple[str, ...], int] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        labels = self.spec.keyLabels
        self._own_limits = {
            tuple(entry.key.get(label, "") for label in labels): entry.maxConcurrent
            for entry in self.spec.limits
            if set(entry.key) == set(labels)  # the API server refuses others; a hand-made model may not
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ConcurrencyPolicy:
        """A ConcurrencyPolicy or a ClusterConcurrencyPolicy, by its kind (a cluster one has no namespace)."""
        meta = body["metadata"]
        cluster = body.get("kind") == CLUSTER_KIND or not meta.get("namespace")
        spec_model = ClusterPolicySpec if cluster else PolicySpec
        return cls(
            namespace="" if cluster else meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            generation=int(meta.get("generation", 1)),
            created=parse_timestamp(meta["creationTimestamp"]),
            spec=spec_model.model_validate(body.get("spec", {})),
        )

    @property
    def cluster_scoped(self) -> bool:
        return not self.namespace

    @property
    def kind(self) -> str:
        return CLUSTER_KIND if self.cluster_scoped else KIND

    @property
    def namespace_selector(self) -> LabelSelector | None:
        """Which namespaces a ClusterConcurrencyPolicy reaches; None for a ConcurrencyPolicy (its own)."""
        return self.spec.namespaceSelector if isinstance(self.spec, ClusterPolicySpec) else None

    @property
    def mention(self) -> str:
        """How Events on a Job name it: "policy exports" (of the Job's namespace), "cluster policy per-team"."""
        return f"cluster policy {self.name}" if self.cluster_scoped else f"policy {self.name}"

    @property
    def title(self) -> str:
        """How messages name it: "ConcurrencyPolicy team-a/exports", "ClusterConcurrencyPolicy per-team"."""
        return f"{self.kind} {self.name}" if self.cluster_scoped else f"{self.kind} {self.namespace}/{self.name}"

    def limit_for(self, key: tuple[str, ...]) -> int:
        """How many Jobs of this key may run at once: the one place a decision reads a limit.

        The key's own entry in spec.limits if it has one, else spec.maxConcurrent.
        """
        return self._own_limits.get(key, self.spec.maxConcurrent)

    def has_own_limit(self, key: tuple[str, ...]) -> bool:
        return key in self._own_limits
