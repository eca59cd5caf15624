<?php
// Increments the number in a file N times, each under an exclusive flock, the way
// Laravel's file cache and session stores do a read-modify-write.
[$_, $path, $n] = $argv;
for ($i = 0; $i < (int)$n; $i++) {
    $f = fopen($path, 'c+');
    if ($f === false || !flock($f, LOCK_EX)) {
        fwrite(STDERR, "open or flock failed\n");
        exit(1);
    }
    $v = (int)stream_get_contents($f);
    rewind($f);
    ftruncate($f, 0);
    fwrite($f, (string)($v + 1));
    fflush($f);
    flock($f, LOCK_UN);
    fclose($f);
}
