package distributor

import (
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/stretchr/testify/require"
)

// TestSeriesHash pins the shard key. If this test fails, every existing
// cluster would re-shard on upgrade: do not change the expected values.
func TestSeriesHash(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ls    labels.Labels
		hash  uint64
		token uint32
	}{
		{name: "empty", ls: labels.EmptyLabels(), hash: 0xef46db3751d8e999, token: 0xbe9e32ae},
		{name: "metric name only", ls: labels.FromStrings("__name__", "up"), hash: 0x23d4c2cb13387598, token: 0x30ecb753},
		{name: "typical scrape series", ls: labels.FromStrings("__name__", "http_requests_total", "code", "200", "instance", "10.0.0.1:8080", "job", "api"), hash: 0x0ef334b14ef6eefb, token: 0x4005da4a},
		{name: "utf-8", ls: labels.FromStrings("__name__", "température", "ville", "Zürich"), hash: 0xb17f655ba5abb42f, token: 0x14d4d174},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := SeriesHash(tc.ls)
			require.Equal(t, tc.hash, h, "hash %#x", h)
			require.Equal(t, tc.token, Token(h), "token %#x", Token(h))
		})
	}
}

func TestSeriesHash_SeparatesLabelBoundaries(t *testing.T) {
	// Moving bytes between a name and its value, or between two labels,
	// must change the hash.
	a := labels.FromStrings("ab", "c")
	b := labels.FromStrings("a", "bc")
	c := labels.FromStrings("a", "b", "c", "")
	require.NotEqual(t, SeriesHash(a), SeriesHash(b))
	require.NotEqual(t, SeriesHash(b), SeriesHash(c))
	require.Equal(t, SeriesHash(a), SeriesHash(labels.FromStrings("ab", "c")))
}

func TestToken_Folds(t *testing.T) {
	require.Equal(t, uint32(0), Token(0))
	require.Equal(t, uint32(0xffffffff), Token(0x00000000ffffffff))
	require.Equal(t, uint32(0xffffffff), Token(0xffffffff00000000))
	require.Equal(t, uint32(0x0f0f0f0f), Token(0xf0f0f0f0ffffffff))
}
