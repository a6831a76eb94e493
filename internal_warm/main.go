package main

import (
	_ "github.com/hashicorp/memberlist"
	_ "github.com/prometheus/prometheus/discovery/file"
	_ "github.com/prometheus/prometheus/promql"
	_ "github.com/prometheus/prometheus/promql/promqltest"
	_ "github.com/prometheus/prometheus/scrape"
	_ "github.com/prometheus/prometheus/storage/remote"
	_ "github.com/prometheus/prometheus/tsdb"
	_ "github.com/prometheus/prometheus/web/api/v1"
	_ "google.golang.org/grpc"
	_ "github.com/oklog/run"
	_ "github.com/stretchr/testify/require"
	_ "go.uber.org/goleak"
)



import (
	_ "github.com/prometheus/client_golang/prometheus/promauto"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/prometheus/client_golang/prometheus/testutil"
	_ "github.com/prometheus/prometheus/tsdb/chunkenc"
	_ "github.com/prometheus/prometheus/util/teststorage"
	_ "google.golang.org/grpc/test/bufconn"
	_ "github.com/prometheus/common/version"
	_ "github.com/cespare/xxhash/v2"
)
func main() {}
