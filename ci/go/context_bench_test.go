// Go's own context package on the scenarios of benches/versus.rs, for a third
// column in docs/benchmarks.md (standard library only; run by ci/bench_go.sh).
//
// Names match the Rust scenarios. Tree and waiter scenarios build their
// instances with the timer stopped and time only the cancel, like
// `batched` in benches/versus.rs. Go has no "poll once" registration, so
// `waiter_register` has no Go figure.
package gobench

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"
)

var sink error

func BenchmarkIsDone1t(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		sink = ctx.Err()
	}
}

// parallel runs work(n) on `threads` goroutines pinned to OS threads and
// reports ns per op per goroutine through b's timer (wall clock).
func parallel(b *testing.B, threads int, work func(n int)) {
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	ready.Add(threads)
	done.Add(threads)
	for t := 0; t < threads; t++ {
		go func() {
			runtime.LockOSThread()
			ready.Done()
			<-start
			work(b.N)
			done.Done()
		}()
	}
	ready.Wait()
	b.ResetTimer()
	close(start)
	done.Wait()
}

func BenchmarkIsDone2t(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	parallel(b, 2, func(n int) {
		var e error
		for i := 0; i < n; i++ {
			e = ctx.Err()
		}
		_ = e
	})
}

func BenchmarkChildCreateDrop(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		// Go's equivalent of dropping the handle is calling cancel.
		_, c := context.WithCancel(parent)
		c()
	}
}

func BenchmarkChildCreateCancelDrop(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := 0; i < b.N; i++ {
		child, c := context.WithCancel(parent)
		c()
		sink = child.Err()
	}
}

func BenchmarkChildOfCancelled(b *testing.B) {
	parent, cancel := context.WithCancel(context.Background())
	cancel()
	for i := 0; i < b.N; i++ {
		_, c := context.WithCancel(parent)
		c()
	}
}

// batched times op over b.N instances built `batch` at a time untimed.
func batched[S any](b *testing.B, batch int, setup func() S, op func(S)) {
	b.StopTimer()
	left := b.N
	for left > 0 {
		n := batch
		if left < n {
			n = left
		}
		left -= n
		items := make([]S, n)
		for i := range items {
			items[i] = setup()
		}
		b.StartTimer()
		for _, s := range items {
			op(s)
		}
		b.StopTimer()
	}
}

func batchFor(n int) int {
	if n >= 10000 {
		return 1
	}
	return 10000 / n
}

// tree is a cancellable root and the cancel funcs of its descendants (kept
// so that nothing is leaked as far as vet can tell; the root cancels them).
type tree struct {
	cancel context.CancelFunc
	rest   []context.CancelFunc
}

func flat(b *testing.B, n int) {
	batched(b, batchFor(n), func() tree {
		root, cancel := context.WithCancel(context.Background())
		t := tree{cancel, make([]context.CancelFunc, 0, n)}
		for i := 0; i < n; i++ {
			_, c := context.WithCancel(root)
			t.rest = append(t.rest, c)
		}
		return t
	}, func(t tree) { t.cancel() })
}

func chain(b *testing.B, n int) {
	batched(b, batchFor(n), func() tree {
		root, cancel := context.WithCancel(context.Background())
		t := tree{cancel, make([]context.CancelFunc, 0, n)}
		last := root
		for i := 0; i < n; i++ {
			var c context.CancelFunc
			last, c = context.WithCancel(last)
			t.rest = append(t.rest, c)
		}
		return t
	}, func(t tree) { t.cancel() })
}

func BenchmarkCancelFlat10(b *testing.B)    { flat(b, 10) }
func BenchmarkCancelFlat100(b *testing.B)   { flat(b, 100) }
func BenchmarkCancelFlat1000(b *testing.B)  { flat(b, 1000) }
func BenchmarkCancelChain10(b *testing.B)   { chain(b, 10) }
func BenchmarkCancelChain100(b *testing.B)  { chain(b, 100) }
func BenchmarkCancelChain1000(b *testing.B) { chain(b, 1000) }

// wake: n goroutines parked on ctx.Done(); the timed part is cancel(),
// which closes the channel and readies every one of them. Instances are
// built a batch at a time (about 10k goroutines), and the woken goroutines
// are waited for untimed, before the next batch.
func wake(b *testing.B, n int) {
	type inst struct {
		cancel context.CancelFunc
		woke   *sync.WaitGroup
	}
	b.StopTimer()
	left := b.N
	for left > 0 {
		k := batchFor(n)
		if left < k {
			k = left
		}
		left -= k
		items := make([]inst, k)
		for i := range items {
			ctx, cancel := context.WithCancel(context.Background())
			var parked sync.WaitGroup
			woke := new(sync.WaitGroup)
			parked.Add(n)
			woke.Add(n)
			for j := 0; j < n; j++ {
				go func() {
					done := ctx.Done()
					parked.Done()
					<-done
					woke.Done()
				}()
			}
			parked.Wait()
			items[i] = inst{cancel, woke}
		}
		// Let the last goroutines reach their channel receive.
		time.Sleep(time.Millisecond)
		b.StartTimer()
		for _, it := range items {
			it.cancel()
		}
		b.StopTimer()
		for _, it := range items {
			it.woke.Wait()
		}
	}
}

func BenchmarkWake1(b *testing.B)    { wake(b, 1) }
func BenchmarkWake100(b *testing.B)  { wake(b, 100) }
func BenchmarkWake1000(b *testing.B) { wake(b, 1000) }

func churn(b *testing.B, threads int) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	parallel(b, threads, func(n int) {
		for i := 0; i < n; i++ {
			_, c := context.WithCancel(parent)
			c()
		}
	})
}

func BenchmarkChurn1t(b *testing.B) { churn(b, 1) }
func BenchmarkChurn2t(b *testing.B) { churn(b, 2) }

func BenchmarkDeadlineCreateDrop(b *testing.B) {
	for i := 0; i < b.N; i++ {
		_, c := context.WithTimeout(context.Background(), time.Minute)
		c()
	}
}

// Issue 15's per-request deadline: a 5 s WithTimeout child of a live
// cancellable parent, one wait registered (Done() makes the channel a
// select would block on), then cancelled long before it fires.
func perRequest(b *testing.B, threads int) {
	parent, cancel := context.WithCancel(context.Background())
	defer cancel()
	parallel(b, threads, func(n int) {
		for i := 0; i < n; i++ {
			ctx, c := context.WithTimeout(parent, 5*time.Second)
			select {
			case <-ctx.Done():
				panic("done too early")
			default:
			}
			c()
		}
	})
}

func BenchmarkPerRequest1t(b *testing.B) { perRequest(b, 1) }
func BenchmarkPerRequest2t(b *testing.B) { perRequest(b, 2) }
