package ring

import (
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"strings"
	"time"
)

// InstanceStatus is one instance as the /ring page shows it, and one
// element of the page's JSON form.
type InstanceStatus struct {
	ID                  string  `json:"id"`
	Zone                string  `json:"zone"`
	State               State   `json:"state"`
	Addr                string  `json:"addr"`
	Tokens              int     `json:"tokens"`
	OwnershipPercent    float64 `json:"ownership_percent"` // of the token space, as first owner clockwise
	Heartbeat           int64   `json:"heartbeat"`         // unix milliseconds
	HeartbeatAgeSeconds float64 `json:"heartbeat_age_seconds"`
	RegisteredAt        int64   `json:"registered_at"` // unix milliseconds
	// Healthy is false for LEFT tombstones and for instances whose
	// heartbeat is older than HeartbeatTimeout.
	Healthy bool `json:"healthy"`
}

// status returns the rows of the /ring page at time now.
func (r *Ring) status(now time.Time) []InstanceStatus {
	s := r.snap.Load()
	minHB := now.UnixMilli() - r.cfg.HeartbeatTimeout.Milliseconds()
	out := make([]InstanceStatus, 0, len(s.instances))
	for i := range s.instances {
		inst := &s.instances[i]
		out = append(out, InstanceStatus{
			ID:                  inst.ID,
			Zone:                inst.Zone,
			State:               inst.State,
			Addr:                inst.Addr,
			Tokens:              len(inst.Tokens),
			OwnershipPercent:    100 * s.ownership[i],
			Heartbeat:           inst.Heartbeat,
			HeartbeatAgeSeconds: float64(now.UnixMilli()-inst.Heartbeat) / 1000,
			RegisteredAt:        inst.RegisteredAt,
			Healthy:             inst.State != LEFT && inst.healthy(minHB),
		})
	}
	return out
}

// ServeHTTP serves the /ring page: an HTML table of every known instance,
// or, when the Accept header includes application/json, a JSON array of
// InstanceStatus. A POST with the form value forget=<id> forgets that
// unhealthy instance (the page's Forget button) and redirects back to the
// page; forgetting an unknown instance answers 404, a healthy one or a
// tombstone 409.
func (r *Ring) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch req.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		r.serveForget(w, req)
		return
	default:
		w.Header().Set("Allow", "GET, HEAD, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	rows := r.status(r.now())
	if strings.Contains(req.Header.Get("Accept"), "application/json") {
		w.Header().Set("Content-Type", "application/json")
		if err := json.NewEncoder(w).Encode(rows); err != nil {
			r.logger.Debug("Failed to write /ring JSON", "err", err)
		}
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	data := struct {
		Self              string
		ReplicationFactor int
		ZoneAware         bool
		HeartbeatTimeout  time.Duration
		AutoForgetAfter   time.Duration
		Instances         []InstanceStatus
	}{r.id, r.cfg.ReplicationFactor, r.ZoneAwareReads(), r.cfg.HeartbeatTimeout, r.cfg.AutoForgetAfter, rows}
	if err := ringPage.Execute(w, data); err != nil {
		r.logger.Debug("Failed to write /ring page", "err", err)
	}
}

func (r *Ring) serveForget(w http.ResponseWriter, req *http.Request) {
	id := req.FormValue("forget")
	if id == "" {
		http.Error(w, "missing form value forget=<instance id>", http.StatusBadRequest)
		return
	}
	if err := r.Forget(id); err != nil {
		code := http.StatusConflict
		if errors.Is(err, errUnknownInstance) {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	// Post/redirect/get: reloading the page does not post again.
	http.Redirect(w, req, req.URL.Path, http.StatusSeeOther)
}

// ringPage is parsed once; templates are safe for concurrent Execute.
var ringPage = template.Must(template.New("ring").Funcs(template.FuncMap{
	"age": func(seconds float64) string {
		return time.Duration(seconds * float64(time.Second)).Round(time.Millisecond).String()
	},
}).Parse(`<!DOCTYPE html>
<html>
<head><title>Census ring</title>
<style>
body { font-family: sans-serif; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
tr.unhealthy { background: #fdd; }
</style>
</head>
<body>
<h1>Ring</h1>
<p>Seen from {{.Self}}. Replication factor {{.ReplicationFactor}}{{if .ZoneAware}}, one replica per zone{{end}}; an instance is unhealthy after {{.HeartbeatTimeout}} without a heartbeat{{if .AutoForgetAfter}} and forgotten after {{.AutoForgetAfter}}{{end}}.</p>
<table>
<thead><tr><th>Instance</th><th>Zone</th><th>State</th><th>Address</th><th>Tokens</th><th>Ownership</th><th>Last heartbeat</th><th>Health</th><th></th></tr></thead>
<tbody>
{{- range .Instances}}
<tr{{if not .Healthy}} class="unhealthy"{{end}}><td>{{.ID}}</td><td>{{.Zone}}</td><td>{{.State}}</td><td>{{.Addr}}</td><td>{{.Tokens}}</td><td>{{printf "%.2f" .OwnershipPercent}}%</td><td>{{age .HeartbeatAgeSeconds}} ago</td><td>{{if .Healthy}}healthy{{else}}unhealthy{{end}}</td><td>{{if and (not .Healthy) (ne .State.String "LEFT")}}<form method="post"><input type="hidden" name="forget" value="{{.ID}}"><button type="submit">Forget</button></form>{{end}}</td></tr>
{{- end}}
</tbody>
</table>
</body>
</html>
`))
