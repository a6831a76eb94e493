package querier_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/census-metrics/census/querier"
	"github.com/census-metrics/census/ring"
)

func TestQueryable_ReadyOnlyWithAnActiveIngester(t *testing.T) {
	for _, tc := range []struct {
		name    string
		states  []ring.State
		wantErr error
	}{
		{name: "empty ring", wantErr: querier.ErrNoIngesters},
		{name: "only joining", states: []ring.State{ring.JOINING}, wantErr: querier.ErrNoIngesters},
		{name: "only leaving", states: []ring.State{ring.LEAVING, ring.LEAVING}, wantErr: querier.ErrNoIngesters},
		{name: "one active", states: []ring.State{ring.JOINING, ring.ACTIVE}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &fakeRing{rf: 3}
			for i, s := range tc.states {
				r.instances = append(r.instances, ring.InstanceDesc{ID: string(rune('a' + i)), State: s})
			}
			q := querier.NewQueryable(r, nil, nil, nil)
			err := q.Ready()
			if tc.wantErr == nil {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, tc.wantErr)
			}
		})
	}
}
