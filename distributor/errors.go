package distributor

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrNoQuorum is wrapped by commit errors where some series reached fewer
// than a quorum of their replicas: those samples are not acknowledged and
// the sender should retry them.
var ErrNoQuorum = errors.New("no quorum")

// ErrInvalidSeries is wrapped by errors for input that can never be stored
// (invalid labels, sample types not supported yet); retrying cannot help.
var ErrInvalidSeries = errors.New("invalid series")

// ErrLimited is wrapped by commit errors where an ingester refused part of
// the input because a limit was reached; the rest was stored.
var ErrLimited = errors.New("limit reached")

// noQuorumError reports which ingesters failed and how many series they
// left without a quorum.
func noQuorumError(seriesWithoutQuorum, quorum int, failed map[string]error) error {
	ids := make([]string, 0, len(failed))
	for id := range failed {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var sb strings.Builder
	for i, id := range ids {
		if i > 0 {
			sb.WriteString("; ")
		}
		fmt.Fprintf(&sb, "%s: %v", id, failed[id])
	}
	return fmt.Errorf("%w: %d series stored on fewer than %d replicas; failed ingesters: %s", ErrNoQuorum, seriesWithoutQuorum, quorum, sb.String())
}
