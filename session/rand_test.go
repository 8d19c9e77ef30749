package session_test

import "math/rand"

func sessiontestRand(seed int64) *rand.Rand { return rand.New(rand.NewSource(seed)) }
