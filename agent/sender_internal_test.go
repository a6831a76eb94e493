package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestSavePosition(t *testing.T) {
	for _, tc := range []struct {
		name    string
		leftTmp []byte // A temporary file a crash left behind, if any.
	}{
		{name: "fresh"},
		{name: "half-written temporary file from a crash", leftTmp: []byte(`{"segment": 9`)},
		{name: "complete temporary file from a crash before the rename", leftTmp: []byte(`{"segment":9,"offset":9}`)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "position.json")
			require.NoError(t, savePosition(file, position{Segment: 3, Offset: 1234}))
			if tc.leftTmp != nil {
				require.NoError(t, os.WriteFile(file+".tmp", tc.leftTmp, 0o644))
			}
			// A start reads the last position saved, never the temporary file.
			p, err := loadPosition(file)
			require.NoError(t, err)
			require.Equal(t, position{Segment: 3, Offset: 1234}, p)

			require.NoError(t, savePosition(file, position{Segment: 4, Offset: 56}))
			p, err = loadPosition(file)
			require.NoError(t, err)
			require.Equal(t, position{Segment: 4, Offset: 56}, p)
			_, err = os.Stat(file + ".tmp")
			require.ErrorIs(t, err, os.ErrNotExist, "the temporary file is renamed into place")
		})
	}
}
