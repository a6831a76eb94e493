package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// recorder notes the order in which steps stop.
type recorder struct {
	mtx   sync.Mutex // Guards order.
	order []string
}

func (r *recorder) note(s string) {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	r.order = append(r.order, s)
}

func (r *recorder) got() []string {
	r.mtx.Lock()
	defer r.mtx.Unlock()
	return append([]string(nil), r.order...)
}

// component runs until its context ends, then takes a while to drain, so a
// step that did not wait for it would overtake it.
func (r *recorder) component(name string) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		<-ctx.Done()
		time.Sleep(20 * time.Millisecond)
		r.note(name)
		return nil
	}
}

func TestLifecycle_StopsInOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failing bool // The grpc component fails on its own instead of an interrupt.
		wantErr string
	}{
		{name: "interrupt"},
		{name: "a component fails", failing: true, wantErr: "listener closed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var rec recorder
			life := newLifecycle(slog.New(slog.DiscardHandler))
			life.add("agent", rec.component("agent"), nil)
			life.add("http", rec.component("http"), nil)
			life.add("ring leaving", nil, func() { rec.note("ring leaving") })
			grpcFails := make(chan struct{})
			life.add("grpc", func(ctx context.Context) error {
				select {
				case <-grpcFails:
					rec.note("grpc")
					return errors.New("listener closed")
				case <-ctx.Done():
					time.Sleep(20 * time.Millisecond)
					rec.note("grpc")
					return nil
				}
			}, nil)
			life.add("ingester", rec.component("ingester"), nil)
			life.add("ring", rec.component("ring"), nil)

			errc := make(chan error, 1)
			go func() { errc <- life.Run() }()
			if tc.failing {
				close(grpcFails)
			} else {
				life.Interrupt(nil)
			}
			select {
			case err := <-errc:
				if tc.wantErr == "" {
					require.NoError(t, err)
				} else {
					require.EqualError(t, err, tc.wantErr)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the lifecycle did not stop")
			}
			want := []string{"agent", "http", "ring leaving", "grpc", "ingester", "ring"}
			if tc.failing {
				// The failed component stopped first; the rest keep their order.
				want = []string{"grpc", "agent", "http", "ring leaving", "ingester", "ring"}
			}
			require.Equal(t, want, rec.got())
		})
	}
}
