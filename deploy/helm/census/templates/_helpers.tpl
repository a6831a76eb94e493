{{/*
census.fullname prefixes every object's name: the release name, or
<release>-census when the release name does not contain "census".
*/}}
{{- define "census.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/*
census.selectorLabels selects the pods of one component of this release:
call it with (dict "root" $ "component" "ingester"). Without a component
it selects every pod of the release (the gossip Service).
*/}}
{{- define "census.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/*
census.image is the container image of every role.
*/}}
{{- define "census.image" -}}
image: {{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- end -}}

{{/*
census.ringArgs are the flags every member of the ring takes: its name in
the ring is its pod's, and it joins through the gossip Service. $(VAR) is
expanded by the kubelet from the container's environment (census.env).
*/}}
{{- define "census.ringArgs" -}}
- --instance.id=$(POD_NAME)
- --memberlist.join={{ include "census.fullname" . }}-gossip.$(POD_NAMESPACE).svc.{{ .Values.clusterDomain }}:7946
- --ring.replication-factor={{ .Values.ring.replicationFactor }}
{{- with .Values.ring.gossipKeySecret }}
- --memberlist.secret-key-file=/etc/census/gossip/key
{{- end }}
- --log.level={{ .Values.logLevel }}
{{- end -}}

{{/*
census.env gives the container its pod's name and namespace (the downward
API), for census.ringArgs.
*/}}
{{- define "census.env" -}}
- name: POD_NAME
  valueFrom: {fieldRef: {fieldPath: metadata.name}}
- name: POD_NAMESPACE
  valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
{{- end -}}

{{/*
census.probes: ready once the role can do its job (/ready), restarted only
when the process stops answering at all (/-/healthy answers 200 while it
runs, through a WAL replay or a hand-off).
*/}}
{{- define "census.probes" -}}
readinessProbe:
  httpGet: {path: /ready, port: http}
  periodSeconds: 5
livenessProbe:
  httpGet: {path: /-/healthy, port: http}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
{{- end -}}

{{/*
census.gossipKeyMount and census.gossipKeyVolume mount the gossip key, when
ring.gossipKeySecret names one.
*/}}
{{- define "census.gossipKeyMount" -}}
{{- if .Values.ring.gossipKeySecret -}}
- {name: gossip-key, mountPath: /etc/census/gossip, readOnly: true}
{{- end -}}
{{- end -}}

{{- define "census.gossipKeyVolume" -}}
{{- with .Values.ring.gossipKeySecret -}}
- name: gossip-key
  secret: {secretName: {{ . }}}
{{- end -}}
{{- end -}}

{{/*
census.duration writes a number of seconds as a Go duration, in minutes
when it is whole minutes: 3300 is 55m.
*/}}
{{- define "census.duration" -}}
{{- if eq (mod . 60) 0 -}}
{{ div . 60 }}m
{{- else -}}
{{ . }}s
{{- end -}}
{{- end -}}

{{/*
census.ingesterZones is the JSON list of ingester StatefulSets to render:
ingester.zones, or one without a zone.
*/}}
{{- define "census.ingesterZones" -}}
{{- if .Values.ingester.zones -}}
{{- toJson .Values.ingester.zones -}}
{{- else -}}
[{}]
{{- end -}}
{{- end -}}
