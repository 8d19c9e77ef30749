//go:build !race

package hybrid_test

const raceBuild = false
