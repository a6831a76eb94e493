package ring_test

import (
	"encoding/json"
	"testing"

	"github.com/census-metrics/census/ring"
	"github.com/stretchr/testify/require"
)

func TestState_Text(t *testing.T) {
	for _, s := range []ring.State{ring.JOINING, ring.ACTIVE, ring.LEAVING, ring.LEFT} {
		text, err := s.MarshalText()
		require.NoError(t, err)
		require.Equal(t, s.String(), string(text))
		var back ring.State
		require.NoError(t, back.UnmarshalText(text))
		require.Equal(t, s, back)
	}
	require.Equal(t, "JOINING", ring.JOINING.String())
	require.Equal(t, "ACTIVE", ring.ACTIVE.String())
	require.Equal(t, "LEAVING", ring.LEAVING.String())
	require.Equal(t, "LEFT", ring.LEFT.String())
	require.Equal(t, "State(0)", ring.State(0).String())

	_, err := ring.State(0).MarshalText()
	require.ErrorContains(t, err, "invalid ring state 0")
	var s ring.State
	require.ErrorContains(t, s.UnmarshalText([]byte("active")), `invalid ring state "active"`)
}

func TestInstanceDesc_JSON(t *testing.T) {
	inst := ring.InstanceDesc{ID: "ing-1", Addr: "10.0.0.1:9095", State: ring.LEAVING, Tokens: []uint32{1, 2}, Heartbeat: 3, RegisteredAt: 4}
	b, err := json.Marshal(inst)
	require.NoError(t, err)
	require.JSONEq(t, `{"id":"ing-1","addr":"10.0.0.1:9095","state":"LEAVING","tokens":[1,2],"heartbeat":3,"registered_at":4}`, string(b))
	var back ring.InstanceDesc
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, inst, back)
}
