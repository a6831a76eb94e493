package main

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// stopStep is one step of a process's stop: a component that runs until
// its context ends, or an action that runs only at the stop (the ingester
// turning LEAVING in the ring before its gRPC server drains).
type stopStep struct {
	name string
	// run, if set, runs from the start until its context is canceled,
	// which happens when this step's turn to stop comes; it should then
	// drain and return.
	run func(ctx context.Context) error
	// stop, if set, runs when this step's turn comes, after run's
	// context is canceled and before waiting for run to return.
	stop func()

	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// lifecycle runs every component of a process at once and stops them one
// after another in the order they were added, each step waiting until the
// previous one has returned. oklog/run interrupts all actors without a
// promised order, so the order the data's safety depends on (the agent
// sends its last scrape while the ingesters still take it, the ingester
// leaves the ring's write path before its TSDB closes) is kept here
// instead. A lifecycle is one actor of the process's run.Group.
type lifecycle struct {
	logger *slog.Logger
	steps  []*stopStep // Added before Run, by one goroutine.

	returned chan *stopStep // A component's run returned before the stop.
	stopc    chan struct{}  // Closed by Interrupt.
	stopOnce sync.Once
}

func newLifecycle(logger *slog.Logger) *lifecycle {
	return &lifecycle{
		logger:   logger,
		returned: make(chan *stopStep, 1),
		stopc:    make(chan struct{}),
	}
}

// add appends a component (run) or a stop action (stop) to the stop
// order. Either may be nil. Every add comes before Run.
func (l *lifecycle) add(name string, run func(ctx context.Context) error, stop func()) {
	l.steps = append(l.steps, &stopStep{name: name, run: run, stop: stop})
}

// Run starts every component, waits for Interrupt or for any component to
// return, then stops every step in order. It returns the error of the
// component that returned first, if any.
func (l *lifecycle) Run() error {
	for _, s := range l.steps {
		if s.run == nil {
			continue
		}
		ctx, cancel := context.WithCancel(context.Background())
		s.cancel, s.done = cancel, make(chan struct{})
		go func() {
			defer close(s.done)
			s.err = s.run(ctx)
			select {
			case l.returned <- s:
			default:
			}
		}()
	}

	var first error
	select {
	case <-l.stopc:
	case s := <-l.returned:
		first = s.err
		if first == nil {
			first = errors.New(s.name + " stopped")
		}
		l.logger.Info("A component stopped: stopping the others", "component", s.name, "err", s.err)
	}
	for _, s := range l.steps {
		start := time.Now()
		if s.cancel != nil {
			s.cancel()
		}
		if s.stop != nil {
			s.stop()
		}
		if s.done != nil {
			<-s.done
		}
		l.logger.Debug("Stopped", "step", s.name, "took", time.Since(start))
	}
	return first
}

// Interrupt makes Run stop every step; Run returns once they have.
func (l *lifecycle) Interrupt(error) {
	l.stopOnce.Do(func() { close(l.stopc) })
}
